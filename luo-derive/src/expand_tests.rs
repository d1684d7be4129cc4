// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Expansion snapshots: the macros' output, formatted with prettyplease, compared with the
//! committed `src/snapshots/*.snap` (insta). Re-bless with
//! `INSTA_UPDATE=always cargo test -p luo-derive`; CI (`CI=true`) never writes them.

use proc_macro2::TokenStream;
use quote::quote;

use crate::{expand_abi, expand_flb, expand_global_state, expand_handler, expand_subsystem};

type Expand = fn(TokenStream, TokenStream) -> TokenStream;

/// Expands `(macro, args, item)` triples and pretty-prints them as one file.
fn pretty(parts: &[(Expand, TokenStream, TokenStream)]) -> String {
    let out: TokenStream = parts
        .iter()
        .map(|(f, a, i)| f(a.clone(), i.clone()))
        .collect();
    match syn::parse2::<syn::File>(out.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(e) => panic!("expansion does not parse: {e}\n{out}"),
    }
}

#[test]
fn handler_with_every_callback() {
    let expansion = pretty(&[
        (
            expand_handler,
            quote!(
                compatible = "memfd-v2",
                abi = luo_generated::memfd::v2::memfd_luo_ser,
                reads = ["memfd-v1"]
            ),
            quote!(
                pub struct Memfd;
            ),
        ),
        (
            expand_handler,
            quote!(),
            quote! {
                impl FileHandler for Memfd {
                    type Private = Vec<u64>;
                    fn can_preserve(&self, file: &dyn File) -> bool { todo!() }
                    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(memfd_luo_ser, Vec<u64>)> { todo!() }
                    fn unpreserve(&self, cx: &Ctx<'_, Self>, file: &dyn File, ser: memfd_luo_ser, p: Vec<u64>) {}
                    fn freeze(&self, cx: &Ctx<'_, Self>, file: &dyn File, ser: &mut memfd_luo_ser, p: &mut Vec<u64>) -> Result { todo!() }
                    fn unfreeze(&self, cx: &Ctx<'_, Self>, file: &dyn File, ser: &memfd_luo_ser, p: &mut Vec<u64>) {}
                    fn retrieve(&self, cx: &Ctx<'_, Self>, data: memfd_luo_ser) -> Result<FileRef> { todo!() }
                    fn can_finish(&self, cx: &Ctx<'_, Self>, file: Option<&dyn File>, s: RetrieveStatus) -> bool { todo!() }
                    fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, memfd_luo_ser>) {}
                    fn get_id(file: &dyn File) -> FileId { todo!() }
                }
            },
        ),
    ]);
    insta::assert_snapshot!(expansion);
}

#[test]
fn handler_with_required_callbacks_only() {
    let expansion = pretty(&[
        (
            expand_handler,
            quote!(
                compatible = "memfd-v1",
                abi = luo_generated::memfd::v1::memfd_luo_ser
            ),
            quote!(
                pub struct MemfdV1;
            ),
        ),
        (
            expand_handler,
            quote!(),
            quote! {
                impl FileHandler for MemfdV1 {
                    fn can_preserve(&self, file: &dyn File) -> bool { todo!() }
                    fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(memfd_luo_ser, ())> { todo!() }
                    fn unpreserve(&self, cx: &Ctx<'_, Self>, file: &dyn File, ser: memfd_luo_ser, p: ()) {}
                    fn retrieve(&self, cx: &Ctx<'_, Self>, data: memfd_luo_ser) -> Result<FileRef> { todo!() }
                    fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, memfd_luo_ser>) {}
                }
            },
        ),
    ]);
    insta::assert_snapshot!(expansion);
}

#[test]
fn flb_and_a_handler_linking_it() {
    let expansion = pretty(&[
        (
            expand_flb,
            quote!(compatible = "iommu-core-v1", abi = iommu_flb_ser),
            quote!(
                pub struct IommuCore;
            ),
        ),
        (
            expand_flb,
            quote!(),
            quote! {
                impl FlbState for IommuCore {
                    type Outgoing = Mutex<Domains>;
                    type Incoming = Domains;
                    fn preserve(&self, cx: &StateCtx<'_>) -> Result<(iommu_flb_ser, Mutex<Domains>)> { todo!() }
                    fn unpreserve(&self, cx: &StateCtx<'_>, ser: iommu_flb_ser, obj: Arc<Mutex<Domains>>) {}
                    fn retrieve(&self, cx: &StateCtx<'_>, ser: iommu_flb_ser) -> Result<Domains> { todo!() }
                    fn finish(&self, cx: &StateCtx<'_>, obj: Arc<Domains>) {}
                }
            },
        ),
        (
            expand_handler,
            quote!(
                compatible = "iommufd-v1",
                abi = iommufd_ser,
                flbs = [IommuCore]
            ),
            quote!(
                pub struct Iommufd;
            ),
        ),
    ]);
    insta::assert_snapshot!(expansion);
}

#[test]
fn handler_scoped_state() {
    let expansion = pretty(&[
        (
            expand_global_state,
            quote!(abi = counter_ser),
            quote!(
                pub struct Counter;
            ),
        ),
        (
            expand_global_state,
            quote!(),
            quote! {
                impl HandlerState for Counter {
                    type Outgoing = u64;
                    type Incoming = u64;
                    fn create(&self, cx: &StateCtx<'_>) -> Result<(counter_ser, u64)> { todo!() }
                    fn restore(&self, cx: &StateCtx<'_>, ser: counter_ser) -> Result<u64> { todo!() }
                    fn destroy(&self, cx: &StateCtx<'_>, obj: StateObj<u64, u64>) {}
                }
            },
        ),
        (
            expand_handler,
            quote!(
                compatible = "counted-v1",
                abi = counted_ser,
                state = Counter
            ),
            quote!(
                pub struct Counted;
            ),
        ),
    ]);
    insta::assert_snapshot!(expansion);
}

#[test]
fn subsystem() {
    let expansion = pretty(&[
        (
            expand_subsystem,
            quote!(name = "hugetlb", abi = hugetlb_ser),
            quote!(
                pub struct Hugetlb;
            ),
        ),
        (
            expand_subsystem,
            quote!(),
            quote! {
                impl Subsystem for Hugetlb {
                    type Outgoing = [u64; 4];
                    type Incoming = [u64; 4];
                    fn prepare(&self, cx: &StateCtx<'_>) -> Result<(hugetlb_ser, [u64; 4])> { todo!() }
                    fn freeze(&self, cx: &StateCtx<'_>, ser: &mut hugetlb_ser, obj: &mut [u64; 4]) -> Result { todo!() }
                    fn cancel(&self, cx: &StateCtx<'_>, obj: [u64; 4]) {}
                    fn boot(&self, cx: &StateCtx<'_>, ser: hugetlb_ser) -> Result<[u64; 4]> { todo!() }
                    fn finish(&self, cx: &StateCtx<'_>, obj: [u64; 4]) {}
                }
            },
        ),
    ]);
    insta::assert_snapshot!(expansion);
}

#[test]
fn feature_negotiated_handler() {
    let expansion = pretty(&[(
        expand_handler,
        quote!(
            name = "memfd",
            abi = luo_generated::memfd::next::memfd_luo_ser,
            features(
                SEALS(bit = 0, fields = [seals], required),
                FOLIOS(bit = 1, fields = [nr_folios, folios]),
            )
        ),
        quote!(
            pub struct Memfd;
        ),
    )]);
    insta::assert_snapshot!(expansion);
}

#[test]
fn abi_derive() {
    let out = expand_abi(quote! {
        #[repr(C)]
        #[abi(size = 16)]
        pub struct pool_ser {
            pub pages: u64,
            pub generation: u32,
            #[abi(reserved)]
            pub _reserved: u32,
        }
    });
    let file = syn::parse2::<syn::File>(out).expect("parses");
    let expansion = prettyplease::unparse(&file);
    insta::assert_snapshot!(expansion);
}

#[test]
fn errors_are_compile_errors_not_panics() {
    // A hostile attribute: every problem comes back as a compile_error!, none panics.
    let out = expand_handler(
        quote!(
            compatible = "",
            compatible = 3,
            abi = 7,
            reads = [1, "x"],
            features(X(bit = 99)),
            bogus
        ),
        quote!(
            struct H;
        ),
    );
    let s = out.to_string();
    assert!(s.matches("compile_error").count() >= 6, "{s}");
    let out = expand_abi(quote!(
        union U {
            a: u8,
        }
    ));
    assert!(out.to_string().contains("compile_error"));
    let out = expand_handler(
        quote!(),
        quote!(
            fn not_an_item_we_know() {}
        ),
    );
    assert!(out.to_string().contains("compile_error"));
}

/// The fallbacks: on an error, the errors and then the impls the rest of the crate relies
/// on, without ops tables or layout proofs (so one mistake is one error).
#[test]
fn fallback_expansions() {
    let expansion = pretty(&[
        (
            // An older version that is not older: the handler keeps its `HandlerAbi`.
            expand_handler,
            quote!(
                compatible = "memfd-v2",
                abi = luo_generated::memfd::v2::memfd_luo_ser,
                reads = ["memfd-v3"],
                flbs = [Pool]
            ),
            quote!(
                pub struct Memfd;
            ),
        ),
        (
            // An FLB without its compatible string keeps `Global` and `FlbAbi`.
            expand_flb,
            quote!(abi = u64, immediate),
            quote!(
                pub struct Pool;
            ),
        ),
        (
            expand_abi_attr,
            quote!(),
            quote! {
                #[repr(C)]
                pub struct inner_ser {
                    pub len: usize,
                }
            },
        ),
    ]);
    insta::assert_snapshot!(expansion);
}

/// `#[derive(Abi)]` in the `(args, item)` shape of the attributes.
fn expand_abi_attr(_: TokenStream, item: TokenStream) -> TokenStream {
    expand_abi(item)
}
